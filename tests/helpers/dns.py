"""A real DNS server on 127.0.0.1 for the /dnsaddr tests: UDP, answering from a dict of records.

Built on dnspython's message codec. It answers whatever it holds in one datagram, however large (as a
hostile server may), NXDOMAIN for a name it has no record of, an empty answer for a name it holds
other types of; with ``silent`` it reads queries and never answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset

Records = Mapping[tuple[str, str], Sequence[str]]
"""``(name, type) -> values``: ``("_dnsaddr.a.test", "TXT") -> ["dnsaddr=/ip4/..."]``; a TXT value
is split into strings of 255 bytes, an A / AAAA value is an address."""


@dataclass
class DnsServer(asyncio.DatagramProtocol):
    """The running server: ``address`` (``"127.0.0.1:port"``) for :class:`DnsResolver`'s nameservers,
    and the ``queries`` it received as ``(name, type)``."""

    records: Records
    silent: bool = False
    queries: list[tuple[str, str]] = field(default_factory=list)
    address: str = ""
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if self.silent:
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        values = self.records.get((name, rdtype))
        if values is None and not any(n == name for n, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif values:
            rrset = dns.rrset.RRset(question.name, dns.rdataclass.IN, question.rdtype)
            for value in values:
                rrset.add(_rdata(question.rdtype, value), ttl=60)
            response.answer.append(rrset)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(max_size=65535, want_shuffle=False), addr)


def _rdata(rdtype: dns.rdatatype.RdataType, value: str) -> dns.rdata.Rdata:
    if rdtype == dns.rdatatype.TXT:
        raw = value.encode()
        strings = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
        return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings)
    return dns.rdata.from_text(dns.rdataclass.IN, rdtype, value)


@asynccontextmanager
async def dns_server(records: Records, *, silent: bool = False) -> AsyncIterator[DnsServer]:
    """A :class:`DnsServer` on 127.0.0.1 (a free port) for the block; closed after it."""
    loop = asyncio.get_running_loop()
    server = DnsServer(records, silent)
    transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
    try:
        server.address = "127.0.0.1:{}".format(transport.get_extra_info("sockname")[1])
        yield server
    finally:
        transport.close()
