"""/dnsaddr and /dns* resolution, and the bootstrap list, against a real DNS server on 127.0.0.1.

The server (tests/helpers/dns.py) answers from a dict; nothing here reaches another network, and the
public IPFS bootstrap list is never resolved or dialed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest

from mimirlite.discovery.bootstrap import IPFS_BOOTSTRAP, expand_bootstrap, resolve_bootstrap
from mimirlite.discovery.dnsaddr import MAX_LOOKUPS, MAX_TXT, DnsResolver
from mimirlite.errors import AddressError, ClosedError, DnsaddrError, LocalError, ProtocolError
from mimirlite.wire.multiaddr import Multiaddr
from tests.helpers import logged
from tests.helpers.dns import DnsServer, Records, dns_server

A = "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN"
B = "QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa"
C = "12D3KooWL2nZ1mb2hVTh8VjK8MsUyftnskh7vWcEseutEoTi7pSP"

Start = Callable[..., Awaitable[DnsServer]]


@pytest.fixture
async def start_dns() -> AsyncIterator[Start]:
    """Starts DNS servers on 127.0.0.1 (``await start_dns(records, silent=False)``); all stopped after."""
    async with AsyncExitStack() as stack:

        async def start(records: Records, *, silent: bool = False) -> DnsServer:
            return await stack.enter_async_context(dns_server(records, silent=silent))

        yield start


def txt(*entries: str) -> list[str]:
    return [f"dnsaddr={e}" for e in entries]


def texts(addrs: list[Multiaddr]) -> list[str]:
    return [str(a) for a in addrs]


async def test_nested_dnsaddr_resolves_to_tcp_addresses_in_dns_order(start_dns: Start) -> None:
    server = await start_dns(
        {
            ("_dnsaddr.boot.test", "TXT"): txt(f"/dnsaddr/a.boot.test/p2p/{A}", "/dnsaddr/b.boot.test"),
            ("_dnsaddr.a.boot.test", "TXT"): txt(
                f"/ip4/10.0.0.1/tcp/4001/p2p/{A}", f"/dns4/a-host.test/tcp/4002/p2p/{A}"
            ),
            ("_dnsaddr.b.boot.test", "TXT"): txt(f"/ip6/2001:db8::1/tcp/4001/p2p/{B}", "/ip4/10.0.0.9/tcp/9"),
            ("a-host.test", "A"): ["10.0.0.2"],
        }
    )
    got = await DnsResolver([server.address], timeout=2).resolve("/dnsaddr/boot.test")
    assert texts(got) == [
        f"/ip4/10.0.0.1/tcp/4001/p2p/{A}",
        f"/ip4/10.0.0.2/tcp/4002/p2p/{A}",
        f"/ip6/2001:db8::1/tcp/4001/p2p/{B}",
        "/ip4/10.0.0.9/tcp/9",
    ]


async def test_a_p2p_id_keeps_only_that_peers_addresses_and_skips_other_peers_lookups(
    start_dns: Start,
) -> None:
    server = await start_dns(
        {
            ("_dnsaddr.boot.test", "TXT"): txt(
                f"/dnsaddr/a.boot.test/p2p/{A}", f"/dnsaddr/b.boot.test/p2p/{B}", "/dnsaddr/any.boot.test"
            ),
            ("_dnsaddr.a.boot.test", "TXT"): txt(f"/ip4/10.0.0.1/tcp/4001/p2p/{A}"),
            ("_dnsaddr.b.boot.test", "TXT"): txt(f"/ip4/10.0.0.2/tcp/4001/p2p/{B}"),
            ("_dnsaddr.any.boot.test", "TXT"): txt(
                f"/ip4/10.0.0.3/tcp/4001/p2p/{B}", f"/ip4/10.0.0.4/tcp/4001/p2p/{A}", "/ip4/10.0.0.5/tcp/1"
            ),
        }
    )
    resolver = DnsResolver([server.address], timeout=2)
    got = await resolver.resolve(Multiaddr.parse(f"/dnsaddr/boot.test/p2p/{A}"))
    assert texts(got) == [f"/ip4/10.0.0.1/tcp/4001/p2p/{A}", f"/ip4/10.0.0.4/tcp/4001/p2p/{A}"]
    assert ("_dnsaddr.b.boot.test", "TXT") not in server.queries  # B's entry cost no lookup
    with pytest.raises(DnsaddrError, match="of another peer skipped") as info:
        await resolver.resolve(f"/dnsaddr/any.boot.test/p2p/{C}")
    assert "3 addresses of another peer skipped" in info.value.why  # the one without /p2p counts too


async def test_dns4_dns6_and_dns_become_ip4_and_ip6(start_dns: Start) -> None:
    server = await start_dns(
        {
            ("v4.test", "A"): ["192.0.2.1", "192.0.2.2"],
            ("v6.test", "AAAA"): ["2001:db8::2"],
            ("both.test", "A"): ["192.0.2.3"],
            ("both.test", "AAAA"): ["2001:db8::3"],
        }
    )
    resolver = DnsResolver([server.address], timeout=2)
    assert texts(await resolver.resolve(f"/dns4/v4.test/tcp/4001/p2p/{C}")) == [
        f"/ip4/192.0.2.1/tcp/4001/p2p/{C}",
        f"/ip4/192.0.2.2/tcp/4001/p2p/{C}",
    ]
    assert texts(await resolver.resolve("/dns6/v6.test/tcp/4001")) == ["/ip6/2001:db8::2/tcp/4001"]
    both = await resolver.resolve("/dns/both.test/tcp/5")
    assert texts(both) == ["/ip4/192.0.2.3/tcp/5", "/ip6/2001:db8::3/tcp/5"]
    only_a = await resolver.resolve("/dns/v4.test/tcp/5")  # no AAAA: the A records are enough
    assert texts(only_a) == ["/ip4/192.0.2.1/tcp/5", "/ip4/192.0.2.2/tcp/5"]
    with pytest.raises(DnsaddrError, match="no AAAA records"):
        await resolver.resolve("/dns6/v4.test/tcp/4001")


async def test_entries_the_host_does_not_dial_are_skipped(start_dns: Start) -> None:
    server = await start_dns(
        {
            ("_dnsaddr.mixed.test", "TXT"): txt(
                f"/ip4/10.0.0.1/udp/4001/quic-v1/p2p/{A}",
                f"/ip4/10.0.0.1/tcp/4001/ws/p2p/{A}",
                f"/dns4/wss.test/tcp/443/wss/p2p/{A}",
                f"/ip4/10.0.0.1/tcp/4001/p2p/{A}",
            ),
            ("_dnsaddr.udp.test", "TXT"): txt("/ip4/10.0.0.1/udp/4001", "/dns4/wss.test/tcp/443/wss"),
            ("wss.test", "A"): ["10.0.0.7"],
        }
    )
    resolver = DnsResolver([server.address], timeout=2)
    assert texts(await resolver.resolve("/dnsaddr/mixed.test")) == [f"/ip4/10.0.0.1/tcp/4001/p2p/{A}"]
    assert ("wss.test", "A") not in server.queries  # checked before any lookup
    with pytest.raises(DnsaddrError, match="2 addresses not TCP over IP skipped"):
        await resolver.resolve("/dnsaddr/udp.test")
    # an /ip4 input comes back as is, with no lookup
    before = len(server.queries)
    assert texts(await resolver.resolve("/ip4/10.1.2.3/tcp/7")) == ["/ip4/10.1.2.3/tcp/7"]
    assert len(server.queries) == before
    with pytest.raises(AddressError, match="cannot resolve"):
        await resolver.resolve(f"/p2p/{A}")


async def test_malformed_and_oversized_txt_records_are_skipped(
    start_dns: Start, caplog: pytest.LogCaptureFixture
) -> None:
    long_entry = "dnsaddr=/ip4/10.0.0.1/tcp/1/p2p/" + "x" * (MAX_TXT * 2)
    server = await start_dns(
        {
            ("_dnsaddr.bad.test", "TXT"): [
                "v=spf1 -all",
                "dnsaddr=/ip4/999.0.0.1/tcp/1",
                "dnsaddr=/dns4/\u00e9.test/tcp/1",
                "dnsaddr=not a multiaddr",
                long_entry,
                "dnsaddr=/ip4/10.0.0.2/tcp/4001",
            ],
            ("_dnsaddr.allbad.test", "TXT"): ["dnsaddr=", "hello", long_entry],
        }
    )
    resolver = DnsResolver([server.address], timeout=2)
    with caplog.at_level(logging.DEBUG, logger="mimirlite.discovery.dnsaddr"):
        assert texts(await resolver.resolve("/dnsaddr/bad.test")) == ["/ip4/10.0.0.2/tcp/4001"]
    logged(caplog, "skipped a TXT record of _dnsaddr.bad.test: not dnsaddr=")
    logged(caplog, "skipped a TXT record of _dnsaddr.bad.test unread", f"{len(long_entry)} bytes")
    logged(caplog, "skipped a TXT record of _dnsaddr.bad.test: not ASCII")
    with pytest.raises(DnsaddrError, match="3 malformed TXT records skipped"):
        await resolver.resolve("/dnsaddr/allbad.test")


async def test_a_loop_ends_and_nesting_is_bounded_by_max_depth(start_dns: Start) -> None:
    chain: dict[tuple[str, str], list[str]] = {
        (f"_dnsaddr.n{i}.test", "TXT"): txt(f"/dnsaddr/n{i + 1}.test") for i in range(5)
    }
    chain[("_dnsaddr.n5.test", "TXT")] = txt("/ip4/10.0.0.5/tcp/5")
    server = await start_dns(
        {
            ("_dnsaddr.a.test", "TXT"): txt("/dnsaddr/b.test"),
            ("_dnsaddr.b.test", "TXT"): txt("/dnsaddr/a.test", "/dnsaddr/b.test"),
            **chain,
        }
    )
    with pytest.raises(DnsaddrError, match=re.escape("loop: /dnsaddr/a.test after a.test -> b.test")):
        await DnsResolver([server.address], timeout=2).resolve("/dnsaddr/a.test")
    assert server.queries == [("_dnsaddr.a.test", "TXT"), ("_dnsaddr.b.test", "TXT")]

    # n0 -> n1 -> ... -> n5 -> an address: six levels
    with pytest.raises(DnsaddrError, match=r"/dnsaddr/n4\.test nested deeper than max_depth=4"):
        await DnsResolver([server.address], timeout=2, max_depth=4).resolve("/dnsaddr/n0.test")
    got = await DnsResolver([server.address], timeout=2, max_depth=6).resolve("/dnsaddr/n0.test")
    assert texts(got) == ["/ip4/10.0.0.5/tcp/5"]


async def test_many_records_and_many_lookups_are_capped(start_dns: Start) -> None:
    many = txt(*(f"/ip4/10.0.{i // 256}.{i % 256}/tcp/4001" for i in range(1000)))
    fan = txt(*(f"/dnsaddr/f{i}.test" for i in range(100)))
    server = await start_dns(
        {
            ("_dnsaddr.many.test", "TXT"): many,
            ("_dnsaddr.fan.test", "TXT"): fan,
            **{(f"_dnsaddr.f{i}.test", "TXT"): txt(f"/ip4/10.1.0.{i}/tcp/1/udp/1") for i in range(100)},
        }
    )
    got = await DnsResolver([server.address], timeout=2).resolve("/dnsaddr/many.test")
    assert texts(got) == [f"/ip4/10.0.{i // 256}.{i % 256}/tcp/4001" for i in range(64)]
    got = await DnsResolver([server.address], timeout=2, max_results=10).resolve("/dnsaddr/many.test")
    assert len(got) == 10
    # 100 nested names, none usable: the lookups stop at MAX_LOOKUPS
    before = len(server.queries)
    with pytest.raises(DnsaddrError, match=f"more than {MAX_LOOKUPS} lookups"):
        await DnsResolver([server.address], timeout=2).resolve("/dnsaddr/fan.test")
    assert len(server.queries) - before == MAX_LOOKUPS


async def test_a_server_that_never_answers_times_out_within_the_bound(start_dns: Start) -> None:
    server = await start_dns({}, silent=True)
    resolver = DnsResolver([server.address], timeout=0.3)
    started = time.monotonic()
    with pytest.raises(DnsaddrError, match=r"no answer in 0.3 s") as info:
        await resolver.resolve("/dnsaddr/slow.test")
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2.0, elapsed
    assert server.queries and server.queries[0] == ("_dnsaddr.slow.test", "TXT")
    assert isinstance(info.value, ClosedError) and not isinstance(info.value, ProtocolError)
    started = time.monotonic()
    with pytest.raises(DnsaddrError, match="no answer"):  # /dns: A and AAAA, each bounded
        await resolver.resolve("/dns/slow.test/tcp/1")
    assert time.monotonic() - started < 3.0


async def test_nxdomain_and_no_records_say_why(start_dns: Start) -> None:
    server = await start_dns({("_dnsaddr.empty.test", "A"): ["10.0.0.1"]})
    resolver = DnsResolver([server.address], timeout=2)
    with pytest.raises(DnsaddrError) as info:
        await resolver.resolve(f"/dnsaddr/nope.test/p2p/{A}")
    assert info.value.addr == f"/dnsaddr/nope.test/p2p/{A}"
    assert info.value.why == "_dnsaddr.nope.test: NXDOMAIN (no such name)"
    with pytest.raises(DnsaddrError, match=r"_dnsaddr\.empty\.test: no TXT records"):
        await resolver.resolve("/dnsaddr/empty.test")


def test_nameservers_are_ip_or_ip_port() -> None:
    DnsResolver(["127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:53"])
    for bad in ("localhost", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]x"):
        with pytest.raises(LocalError, match="bad nameserver"):
            DnsResolver([bad])
    with pytest.raises(LocalError):
        DnsResolver("127.0.0.1")
    with pytest.raises(LocalError):
        DnsResolver([], timeout=1)


def test_the_ipfs_list_is_the_originals() -> None:
    # shared/libp2p.ts of the latest MimirLLM: four /dnsaddr entries and one /ip4 peer
    assert len(IPFS_BOOTSTRAP) == 5
    assert [a.split("/p2p/")[0] for a in IPFS_BOOTSTRAP[:4]] == ["/dnsaddr/bootstrap.libp2p.io"] * 4
    assert IPFS_BOOTSTRAP[4] == (
        "/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ"
    )
    assert expand_bootstrap(IPFS_BOOTSTRAP) == list(IPFS_BOOTSTRAP)  # canonical text already


def test_expand_bootstrap_expands_ipfs_checks_and_drops_duplicates() -> None:
    mine = f"/ip4/10.0.0.1/tcp/4001/p2p/{C}"
    assert expand_bootstrap([mine, "ipfs", IPFS_BOOTSTRAP[1], mine, " ipfs "]) == [mine, *IPFS_BOOTSTRAP]
    assert expand_bootstrap([]) == []
    with pytest.raises(AddressError, match=re.escape("bad bootstrap address '/ip4/10.0.0.300/tcp/1'")):
        expand_bootstrap([mine, "/ip4/10.0.0.300/tcp/1", "ipfs"])
    with pytest.raises(AddressError, match="'ipfs2'"):
        expand_bootstrap(["ipfs2"])


async def test_resolve_bootstrap_resolves_the_dns_ones_keeps_the_rest_and_logs_failures(
    start_dns: Start, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_dns(
        {
            ("_dnsaddr.boot.test", "TXT"): txt(
                f"/ip4/10.0.0.1/tcp/4001/p2p/{A}", f"/ip4/10.0.0.2/udp/4001/quic-v1/p2p/{A}"
            ),
            ("node.test", "A"): ["10.0.0.3"],
        }
    )
    plain = f"/ip4/10.9.9.9/tcp/4001/p2p/{C}"
    with caplog.at_level(logging.WARNING, logger="mimirlite.discovery.bootstrap"):
        got = await resolve_bootstrap(
            [
                f"/dnsaddr/boot.test/p2p/{A}",
                plain,
                "/dnsaddr/gone.test",
                f"/dns4/node.test/tcp/4001/p2p/{B}",
                f"/ip4/10.0.0.1/tcp/4001/p2p/{A}",  # the same as the first's answer
                plain,
            ],
            DnsResolver([server.address], timeout=2),
        )
    assert texts(got) == [f"/ip4/10.0.0.1/tcp/4001/p2p/{A}", plain, f"/ip4/10.0.0.3/tcp/4001/p2p/{B}"]
    logged(caplog, "/dnsaddr/gone.test", "NXDOMAIN")
    with pytest.raises(AddressError, match="'/nope'"):
        await resolve_bootstrap(["/nope"], DnsResolver([server.address]))


async def test_resolve_bootstrap_resolves_concurrently(start_dns: Start) -> None:
    # five silent names at 0.5 s each: one after the other would take 2.5 s
    server = await start_dns({}, silent=True)
    started = time.monotonic()
    names = [f"/dns4/s{i}.test/tcp/1" for i in range(5)]
    got = await asyncio.wait_for(resolve_bootstrap(names, DnsResolver([server.address], timeout=0.5)), 10)
    assert got == []
    assert time.monotonic() - started < 2.0
    assert len({name for name, _ in server.queries}) == 5
