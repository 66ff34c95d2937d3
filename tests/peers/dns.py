"""A small authoritative DNS server for tests, on 127.0.0.1 and an ephemeral port.

`DnsServer` answers over UDP and TCP on the same port, using dnslib's
`DNSServer` with a resolver of ours that reads a mutable, thread-safe zone:

    with DnsServer() as dns_peer:
        dns_peer.add("example.test", "MX", "10 mx1.example.test.")
        dns_peer.add("mx1.example.test", "A", "127.0.0.1")
        resolver = dns_peer.resolver()        # dnspython async resolver

Supported record types: A, AAAA, MX (including the null MX "0 ."), TXT (a long
value is split into character-strings of at most 255 bytes), CNAME (chased
inside the zone), NS, PTR and SOA. Names are case-insensitive. A name with no
records at all (and no records below it) gets NXDOMAIN; a known name without
the asked type gets NOERROR with an empty answer. When an SOA exists at or
above the name, negative answers carry it in the authority section.

Failures can be scripted per name with `fail()`: any RCODE (e.g. SERVFAIL,
REFUSED) or "TIMEOUT", which sends no reply at all.

UDP answers larger than 512 bytes (or than the EDNS payload size the query
advertised) are truncated with TC set, so clients retry over TCP.

Limits: no wildcards, no delegation/referrals, no DNSSEC, no zone transfers,
one query per TCP connection (as dnslib's handler reads one message), class IN
only. It is a test peer, not a name server.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

import dns.asyncresolver
import dns.resolver
import pytest
from dnslib import (
    AAAA,
    CNAME,
    EDNS0,
    MX,
    NS,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    TXT,
    A,
    DNSError,
    DNSHeader,
    DNSRecord,
    RD,
)
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

__all__ = ["DnsServer", "Query", "Record", "Zone", "dns_server"]

_log = logging.getLogger(__name__)

SUPPORTED_TYPES = ("A", "AAAA", "MX", "TXT", "CNAME", "NS", "PTR", "SOA")
TIMEOUT = "TIMEOUT"
_MAX_CNAME_HOPS = 8
_PLAIN_UDP_LIMIT = 512


def normalize(name: str) -> str:
    """Lower-case a domain name and make it absolute (trailing dot)."""
    name = name.strip().lower()
    if name in ("", "."):
        return "."
    return name if name.endswith(".") else name + "."


@dataclass(frozen=True)
class Record:
    """One resource record as stored in the zone."""

    name: str
    rtype: str
    value: str | tuple[str, ...]
    ttl: int
    rdata: RD

    def same_data(self, other: Record) -> bool:
        return self.rtype == other.rtype and self.rdata == other.rdata


@dataclass(frozen=True)
class Query:
    """One question the server received (for asserting on client behaviour)."""

    name: str
    rtype: str
    protocol: str
    at: float


def _split_txt(value: str | bytes) -> list[bytes]:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if not raw:
        return [b""]
    return [raw[i : i + 255] for i in range(0, len(raw), 255)]


def _txt_rdata(value: str | list[str] | tuple[str, ...]) -> TXT:
    """A str is one logical string (split if long); a sequence is kept as is."""
    if isinstance(value, str):
        return TXT(_split_txt(value))
    parts = [part.encode("utf-8") for part in value]
    if any(len(part) > 255 for part in parts):
        raise ValueError("explicit TXT character-strings must be <= 255 bytes")
    return TXT(parts)


def _mx_rdata(value: str) -> MX:
    fields = value.split()
    if len(fields) != 2:
        raise ValueError(f"MX value must be 'preference host', got {value!r}")
    preference = int(fields[0])
    if not 0 <= preference <= 65535:
        raise ValueError(f"MX preference out of range: {preference}")
    return MX(normalize(fields[1]), preference)


def _soa_rdata(value: str) -> SOA:
    fields = value.split()
    if len(fields) != 7:
        raise ValueError("SOA value: 'mname rname serial refresh retry expire min'")
    times = tuple(int(field) for field in fields[2:])
    return SOA(normalize(fields[0]), normalize(fields[1]), times)


def make_rdata(rtype: str, value: str | list[str] | tuple[str, ...]) -> RD:
    """Build dnslib rdata from the textual value; raises ValueError if invalid."""
    if rtype == "TXT":
        return _txt_rdata(value)
    if not isinstance(value, str):
        raise ValueError(f"{rtype} value must be a string")
    if rtype == "A":
        return A(str(ipaddress.IPv4Address(value.strip())))
    if rtype == "AAAA":
        return AAAA(str(ipaddress.IPv6Address(value.strip())))
    if rtype == "MX":
        return _mx_rdata(value)
    if rtype == "SOA":
        return _soa_rdata(value)
    builders = {"CNAME": CNAME, "NS": NS, "PTR": PTR}
    if rtype in builders:
        return builders[rtype](normalize(value))
    raise ValueError(f"unsupported record type {rtype!r}; use {SUPPORTED_TYPES}")


class Zone:
    """Thread-safe record store plus the lookup logic of an authoritative server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, list[Record]] = {}
        self._failures: dict[str, str] = {}

    def add(
        self,
        name: str,
        rtype: str,
        value: str | list[str] | tuple[str, ...],
        ttl: int = 60,
    ) -> Record:
        rtype = rtype.upper()
        key = normalize(name)
        stored = value if isinstance(value, str) else tuple(value)
        record = Record(key, rtype, stored, ttl, make_rdata(rtype, value))
        with self._lock:
            kept = [r for r in self._records.get(key, []) if not r.same_data(record)]
            self._records[key] = [*kept, record]
        return record

    def remove(self, name: str, rtype: str | None = None) -> int:
        """Remove all records of a name (or only those of `rtype`); return count."""
        key = normalize(name)
        with self._lock:
            self._failures.pop(key, None)
            current = self._records.get(key, [])
            kept = [r for r in current if rtype and r.rtype != rtype.upper()]
            if kept:
                self._records[key] = kept
            else:
                self._records.pop(key, None)
        return len(current) - len(kept)

    def fail(self, name: str, rcode: str = "SERVFAIL") -> None:
        """Answer every query for `name` with `rcode`, or not at all ("TIMEOUT")."""
        rcode = rcode.upper()
        if rcode != TIMEOUT and rcode not in RCODE.reverse:
            raise ValueError(f"unknown rcode {rcode!r}")
        with self._lock:
            self._failures[normalize(name)] = rcode

    def unfail(self, name: str) -> None:
        with self._lock:
            self._failures.pop(normalize(name), None)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
            self._failures.clear()

    def records(self, name: str | None = None) -> list[Record]:
        with self._lock:
            if name is not None:
                return list(self._records.get(normalize(name), []))
            return [r for records in self._records.values() for r in records]

    def failure_for(self, name: str) -> str | None:
        with self._lock:
            return self._failures.get(normalize(name))

    def lookup(self, name: str) -> list[Record] | None:
        """Records of a name; [] for an empty non-terminal; None if it doesn't exist."""
        key = normalize(name)
        with self._lock:
            if key in self._records:
                return list(self._records[key])
            suffix = "." + key
            if any(other.endswith(suffix) for other in self._records):
                return []
        return None

    def soa_for(self, name: str) -> Record | None:
        """The SOA at `name` or at its closest ancestor, if any."""
        labels = normalize(name).rstrip(".").split(".")
        with self._lock:
            for start in range(len(labels) + 1):
                key = normalize(".".join(labels[start:]))
                for record in self._records.get(key, []):
                    if record.rtype == "SOA":
                        return record
        return None


class _Drop(DNSError):
    """Raised to make dnslib's handler send nothing (a scripted timeout)."""


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    """dnslib resolver answering authoritatively from a `Zone`."""

    def __init__(self, zone: Zone, on_query: _QueryLog) -> None:
        self.zone = zone
        self.on_query = on_query

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        qname = str(request.q.qname)
        qtype = QTYPE.get(request.q.qtype, str(request.q.qtype))
        self.on_query.append(qname, qtype, handler.protocol)
        reply = request.reply(ra=0, aa=1)
        failure = self.zone.failure_for(qname)
        if failure == TIMEOUT:
            raise _Drop(f"scripted timeout for {qname}")
        if failure is not None:
            reply.header.rcode = RCODE.reverse[failure]
            return reply
        self._answer(reply, qname, qtype)
        return reply

    def _answer(self, reply: DNSRecord, qname: str, qtype: str) -> None:
        owner = qname
        for _ in range(_MAX_CNAME_HOPS):
            records = self.zone.lookup(owner)
            if records is None:
                reply.header.rcode = RCODE.NXDOMAIN
                self._add_soa(reply, owner)
                return
            matching = [r for r in records if qtype in (r.rtype, "ANY")]
            cnames = [r for r in records if r.rtype == "CNAME"]
            if matching or not cnames:
                self._add_answers(reply, owner, matching)
                if not matching:
                    self._add_soa(reply, owner)
                return
            self._add_answers(reply, owner, cnames[:1])
            owner = str(cnames[0].rdata.label)
        reply.header.rcode = RCODE.SERVFAIL

    @staticmethod
    def _add_answers(reply: DNSRecord, owner: str, records: list[Record]) -> None:
        for record in records:
            rtype = QTYPE.reverse[record.rtype]
            reply.add_answer(RR(owner, rtype, rdata=record.rdata, ttl=record.ttl))

    def _add_soa(self, reply: DNSRecord, name: str) -> None:
        soa = self.zone.soa_for(name)
        if soa is not None:
            reply.add_auth(RR(soa.name, QTYPE.SOA, rdata=soa.rdata, ttl=soa.ttl))


class _QueryLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queries: list[Query] = []

    def append(self, name: str, rtype: str, protocol: str) -> None:
        with self._lock:
            self._queries.append(Query(normalize(name), rtype, protocol, time.time()))

    def snapshot(self) -> list[Query]:
        with self._lock:
            return list(self._queries)

    def clear(self) -> None:
        with self._lock:
            self._queries.clear()


def _udp_limit(request: DNSRecord) -> int:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(_PLAIN_UDP_LIMIT, int(rr.rclass))
    return _PLAIN_UDP_LIMIT


def _has_edns(request: DNSRecord) -> bool:
    return any(rr.rtype == QTYPE.OPT for rr in request.ar)


def _truncated(reply: DNSRecord) -> DNSRecord:
    header = DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap)
    header.tc = 1
    return DNSRecord(header, q=reply.q)


class _Handler(DNSHandler):  # type: ignore[misc]
    """dnslib handler that truncates UDP replies the way real servers do."""

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        reply = self.server.resolver.resolve(request, self)
        if _has_edns(request):
            reply.add_ar(EDNS0(udp_len=1232))
        packed: bytes = reply.pack()
        if self.protocol == "udp" and len(packed) > _udp_limit(request):
            packed = _truncated(reply).pack()
        return packed


def _quiet_logger() -> DNSLogger:
    return DNSLogger(log="error", prefix=False, logf=_log.debug)


class DnsServer:
    """Authoritative test DNS server on UDP+TCP 127.0.0.1:<ephemeral>."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self.zone = Zone()
        self._log = _QueryLog()
        self._servers: list[DNSServer] = []
        self._threads: list[threading.Thread] = []
        self.port = 0

    # -- zone data -----------------------------------------------------------
    def add(
        self,
        name: str,
        rtype: str,
        value: str | list[str] | tuple[str, ...],
        ttl: int = 60,
    ) -> Record:
        """Add a record, e.g. add("example.test", "MX", "10 mx1.example.test.")."""
        return self.zone.add(name, rtype, value, ttl)

    def replace(self, name: str, rtype: str, *values: str, ttl: int = 60) -> None:
        """Replace all records of `rtype` at `name` with `values`."""
        self.zone.remove(name, rtype)
        for value in values:
            self.zone.add(name, rtype, value, ttl)

    def remove(self, name: str, rtype: str | None = None) -> int:
        return self.zone.remove(name, rtype)

    def fail(self, name: str, rcode: str = "SERVFAIL") -> None:
        self.zone.fail(name, rcode)

    def unfail(self, name: str) -> None:
        self.zone.unfail(name)

    def clear(self) -> None:
        self.zone.clear()
        self._log.clear()

    def records(self, name: str | None = None) -> list[Record]:
        return self.zone.records(name)

    def queries(self) -> list[Query]:
        """Every question received so far, oldest first."""
        return self._log.snapshot()

    # -- clients -------------------------------------------------------------
    def resolver(self, timeout: float = 2.0) -> dns.asyncresolver.Resolver:
        """A dnspython async resolver pointed at this server only, no cache."""
        resolver = dns.asyncresolver.Resolver(configure=False)
        self._configure(resolver, timeout)
        return resolver

    def sync_resolver(self, timeout: float = 2.0) -> dns.resolver.Resolver:
        resolver = dns.resolver.Resolver(configure=False)
        self._configure(resolver, timeout)
        return resolver

    def _configure(self, resolver: dns.resolver.BaseResolver, timeout: float) -> None:
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.timeout = timeout
        resolver.lifetime = timeout

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> DnsServer:
        if self._servers:
            raise RuntimeError("DnsServer already started")
        resolver = ZoneResolver(self.zone, self._log)
        self._servers = self._bind(resolver)
        self.port = self._servers[0].server.server_address[1]
        for server in self._servers:
            self._threads.append(self._serve(server))
        return self

    def _bind(self, resolver: ZoneResolver) -> list[DNSServer]:
        """Bind UDP (ephemeral) then TCP on the same port; retry if TCP is taken."""
        last_error: OSError | None = None
        for _ in range(20):
            udp = self._make(resolver, self._requested_port, tcp=False)
            port = udp.server.server_address[1]
            try:
                return [udp, self._make(resolver, port, tcp=True)]
            except OSError as error:
                last_error = error
                udp.server.server_close()
                if self._requested_port:
                    break
        raise RuntimeError(f"could not bind UDP+TCP on one port: {last_error}")

    def _make(self, resolver: ZoneResolver, port: int, tcp: bool) -> DNSServer:
        return DNSServer(
            resolver,
            address=self.host,
            port=port,
            tcp=tcp,
            logger=_quiet_logger(),
            handler=_Handler,
        )

    @staticmethod
    def _serve(server: DNSServer) -> threading.Thread:
        kind = "tcp" if server.server.socket_type == socket.SOCK_STREAM else "udp"
        thread = threading.Thread(
            target=server.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"dns-peer-{kind}",
            daemon=True,
        )
        thread.start()
        return thread

    def stop(self) -> None:
        for server in self._servers:
            server.server.shutdown()
            server.server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers, self._threads = [], []

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A started `DnsServer`, stopped after the test. Import it into a conftest."""
    with DnsServer() as server:
        yield server


def _parse_record(text: str) -> tuple[str, str, str]:
    name, rtype, value = text.split(None, 2)
    return name, rtype, value


def main(argv: list[str] | None = None) -> None:
    """Run standalone: python -m tests.peers.dns --record 'a.test A 127.0.0.1'."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--record", action="append", default=[], type=_parse_record)
    args = parser.parse_args(argv)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    with DnsServer(args.host, args.port) as server:
        for name, rtype, value in args.record:
            server.add(name, rtype, value)
        print(f"dns peer listening on {server.host}:{server.port}", flush=True)
        stopped.wait()


if __name__ == "__main__":
    main()
