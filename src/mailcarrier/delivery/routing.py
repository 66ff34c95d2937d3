"""Where to deliver mail for a domain: static routes, MX records, addresses.

`Router.resolve(domain)` returns the hosts to try, in order:

1. a static route from the settings (an exact domain, else "*") wins over
   DNS; its target's port is used;
2. otherwise the domain's MX records, lowest preference first, in random
   order among equal preferences (RFC 5321 5.1), each MX host name
   resolved to its IPv4 then IPv6 addresses;
3. with no MX records at all, the domain's own A/AAAA records, as an
   implicit MX of preference 0 (RFC 5321 5.1).

MX hosts use `delivery_port`. Every name is resolved here, with dnspython,
against the configured nameservers (or the system's, from resolv.conf,
when none are set), and the SMTP client connects to the address while
keeping the name for TLS SNI and logs: left to the client, the name would
go through getaddrinfo and the system resolver.

Failures are split the way a retry needs them:

- `PermanentRouteError` (the recipients bounce): the domain does not exist
  (NXDOMAIN), it publishes a null MX (RFC 7505, "0 ."), or neither its MX
  hosts nor the domain itself has an address;
- `TemporaryRouteError` (try later): timeouts, SERVFAIL and other server
  failures, a resolver that cannot be configured, and any failure to
  resolve a static route's target (an operator's mistake must not bounce
  mail).

Each error carries the enhanced status code (RFC 3463, RFC 7505) that fits.

Answers are cached per domain for the smallest TTL involved (at most an
hour), in a bounded LRU; a lookup with a partial temporary failure is not
cached. Concurrent lookups of one domain share one query. dnspython's own
cache also keeps the MX hosts' addresses for other domains using them.

What this does not do: DNSSEC, DANE or MTA-STS; IDN conversion (domains
arrive as A-labels); dropping MX hosts less preferred than ourselves (RFC
5321 5.1; we are never one of a recipient domain's MX hosts). Limits: at
most `MAX_HOSTS` addresses are tried per attempt (Postfix tries 5), and a
static route's target named by a host name is resolved like an MX host,
except "localhost", which is always 127.0.0.1 (RFC 6761 6.3); with no
nameservers configured such a name goes through getaddrinfo, so
/etc/hosts applies.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from mailcarrier.settings import HostPort, Settings, StaticRoute

__all__ = [
    "Host",
    "PermanentRouteError",
    "Route",
    "RouteError",
    "Router",
    "TemporaryRouteError",
]

log = logging.getLogger(__name__)

MAX_HOSTS = 5
MAX_CACHED_DOMAINS = 10_000
MAX_CACHE_SECONDS = 3600.0
STATIC_CACHE_SECONDS = 60.0
DNS_LIFETIME = 10.0  # seconds for one query, all nameservers and retries
DNS_TRY_TIMEOUT = 2.0  # seconds before the next nameserver is asked
DNS_CACHE_ENTRIES = 20_000
LOCALHOST = "localhost"


@dataclass(frozen=True)
class Host:
    """One address to try: the host's name (for SNI and logs) and its IP."""

    name: str
    address: str
    port: int
    preference: int


@dataclass(frozen=True)
class Route:
    """The hosts for one domain, in the order to try them."""

    domain: str
    hosts: list[Host]


class RouteError(Exception):
    """No usable route; `enhanced` is the RFC 3463 status code that fits."""

    def __init__(self, message: str, enhanced: str) -> None:
        super().__init__(message)
        self.enhanced = enhanced


class PermanentRouteError(RouteError):
    """The domain cannot receive mail: bounce its recipients."""


class TemporaryRouteError(RouteError):
    """The answer could not be had now: try again later."""

    def __init__(self, message: str, enhanced: str = "4.4.3") -> None:
        super().__init__(message, enhanced)


class _NameNotFound(Exception):
    """A name has no address: NXDOMAIN or no A/AAAA records."""


@dataclass(frozen=True)
class _Exchange:
    """An MX host name with its preference and resolved addresses."""

    name: str
    preference: int
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class _Answer:
    """A cached lookup: exchanges grouped by equal preference, best first."""

    groups: tuple[tuple[_Exchange, ...], ...]
    port: int
    expires: float


class Router:
    """Resolves a recipient domain to the hosts to try, with a cache."""

    def __init__(self, settings: Settings, *, lifetime: float = DNS_LIFETIME) -> None:
        self._static = {route.domain: route for route in settings.static_routes}
        self._nameservers = list(settings.nameservers)
        self._port = settings.delivery_port
        self._lifetime = lifetime
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._cache: OrderedDict[str, _Answer] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[_Answer]] = {}
        self._rng = random.Random()

    async def resolve(self, domain: str) -> Route:
        """The route for `domain` (an A-label); raises a `RouteError`."""
        domain = domain.strip().rstrip(".").lower()
        static = self._static.get(domain) or self._static.get("*")
        # A domain name has no ":", so a static route's key cannot clash.
        key = f"static:{static.domain}" if static else domain
        answer = self._cached(key)
        if answer is None:
            answer = await self._lookup_once(key, domain, static)
        return Route(domain, self._hosts(answer))

    # -- cache -------------------------------------------------------------------

    def _cached(self, domain: str) -> _Answer | None:
        answer = self._cache.get(domain)
        if answer is None:
            return None
        if answer.expires <= time.monotonic():
            del self._cache[domain]
            return None
        self._cache.move_to_end(domain)
        return answer

    def _store(self, domain: str, answer: _Answer) -> None:
        if answer.expires <= time.monotonic():
            return
        self._cache[domain] = answer
        self._cache.move_to_end(domain)
        while len(self._cache) > MAX_CACHED_DOMAINS:
            self._cache.popitem(last=False)

    async def _lookup_once(
        self, key: str, domain: str, static: StaticRoute | None
    ) -> _Answer:
        """One lookup per key at a time; concurrent callers share it."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._lookup(key, domain, static))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._lookup_done(key, done))
        return await asyncio.shield(task)

    def _lookup_done(self, key: str, task: asyncio.Task[_Answer]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved here in case every caller went away

    async def _lookup(
        self, key: str, domain: str, static: StaticRoute | None
    ) -> _Answer:
        if static is not None:
            answer = await self._static_answer(static)
        elif domain.startswith("[") and domain.endswith("]"):
            answer = self._literal_answer(domain)
        else:
            answer = await self._mx_answer(domain)
        self._store(key, answer)
        return answer

    # -- ordering ----------------------------------------------------------------

    def _hosts(self, answer: _Answer) -> list[Host]:
        """Hosts in order: preference groups, shuffled within, capped."""
        hosts: list[Host] = []
        for group in answer.groups:
            exchanges = list(group)
            if len(exchanges) > 1:
                self._rng.shuffle(exchanges)
            for exchange in exchanges:
                for address in exchange.addresses:
                    hosts.append(
                        Host(exchange.name, address, answer.port, exchange.preference)
                    )
                    if len(hosts) == MAX_HOSTS:
                        return hosts
        return hosts

    # -- static routes and address literals ----------------------------------------

    async def _static_answer(self, route: StaticRoute) -> _Answer:
        target = route.target
        expires = time.monotonic() + STATIC_CACHE_SECONDS
        try:
            addresses, ttl = await self._target_addresses(target)
        except (_NameNotFound, TemporaryRouteError) as exc:
            raise TemporaryRouteError(
                f"static route for {route.domain}: cannot resolve {target.host}: {exc}"
            ) from exc
        exchange = _Exchange(target.host, 0, tuple(addresses))
        expires = min(expires, time.monotonic() + ttl)
        return _Answer(((exchange,),), target.port, expires)

    async def _target_addresses(self, target: HostPort) -> tuple[list[str], float]:
        if _is_ip(target.host):
            return [target.host], STATIC_CACHE_SECONDS
        if target.host.lower() == LOCALHOST:
            return ["127.0.0.1"], STATIC_CACHE_SECONDS
        if self._nameservers:
            return await self._addresses(target.host)
        addresses = await _system_addresses(target.host, target.port)
        return addresses, STATIC_CACHE_SECONDS

    def _literal_answer(self, domain: str) -> _Answer:
        """An address literal such as [192.0.2.1] or [IPv6:2001:db8::1]."""
        text = domain[1:-1]
        if text.lower().startswith("ipv6:"):
            text = text[5:]
        if not _is_ip(text):
            raise PermanentRouteError(f"{domain} is not a valid address", "5.1.2")
        exchange = _Exchange(text, 0, (text,))
        return _Answer(((exchange,),), self._port, time.monotonic())

    # -- MX lookups ----------------------------------------------------------------

    async def _mx_answer(self, domain: str) -> _Answer:
        mx = await self._query(domain, "MX")
        if mx is None or mx.rrset is None:
            answer = await self._implicit_mx(domain)
        else:
            answer = await self._explicit_mx(domain, mx)
        return answer

    async def _implicit_mx(self, domain: str) -> _Answer:
        """No MX records: the domain itself is the mail host (RFC 5321 5.1)."""
        try:
            addresses, ttl = await self._addresses(domain)
        except _NameNotFound:
            raise PermanentRouteError(
                f"{domain} has no MX and no address records", "5.4.4"
            ) from None
        log.debug("%s: no MX, using its own addresses %s", domain, addresses)
        exchange = _Exchange(domain, 0, tuple(addresses))
        return _Answer(((exchange,),), self._port, _expiry(ttl))

    async def _explicit_mx(self, domain: str, mx: dns.resolver.Answer) -> _Answer:
        # RFC 7505: a null MX ("0 .") says the domain takes no mail; a "."
        # among other records (not allowed) is skipped.
        usable = sorted(
            (rdata.preference, rdata.exchange.to_text(omit_final_dot=True).lower())
            for rdata in mx
            if rdata.exchange != dns.name.root
        )
        if not usable:
            raise PermanentRouteError(
                f"{domain} does not accept mail (null MX)", "5.1.10"
            )
        resolved = await asyncio.gather(
            *(self._addresses(name) for _pref, name in usable), return_exceptions=True
        )
        return self._answer_from_exchanges(domain, usable, resolved, _ttl(mx))

    def _answer_from_exchanges(
        self,
        domain: str,
        usable: list[tuple[int, str]],
        resolved: list[tuple[list[str], float] | BaseException],
        ttl: float,
    ) -> _Answer:
        groups: dict[int, list[_Exchange]] = {}
        temporary: list[str] = []
        for (preference, name), result in zip(usable, resolved, strict=True):
            if isinstance(result, TemporaryRouteError):
                temporary.append(f"{name}: {result}")
            elif isinstance(result, _NameNotFound):
                log.debug("%s: MX host %s has no address", domain, name)
            elif isinstance(result, BaseException):
                raise result
            else:
                addresses, address_ttl = result
                ttl = min(ttl, address_ttl)
                exchange = _Exchange(name, preference, tuple(addresses))
                groups.setdefault(preference, []).append(exchange)
        return self._finish(domain, groups, temporary, ttl)

    def _finish(
        self,
        domain: str,
        groups: dict[int, list[_Exchange]],
        temporary: list[str],
        ttl: float,
    ) -> _Answer:
        if not groups and temporary:
            raise TemporaryRouteError(
                f"{domain}: cannot resolve its MX hosts ({'; '.join(temporary)})"
            )
        if not groups:
            raise PermanentRouteError(
                f"{domain}: none of its MX hosts has an address", "5.4.4"
            )
        ordered = tuple(tuple(groups[pref]) for pref in sorted(groups))
        if temporary:
            log.debug("%s: not caching a partial answer: %s", domain, temporary)
            ttl = 0.0
        return _Answer(ordered, self._port, _expiry(ttl))

    # -- queries -----------------------------------------------------------------

    async def _addresses(self, name: str) -> tuple[list[str], float]:
        """IPv4 then IPv6 addresses of `name`, and the smallest TTL.

        Raises _NameNotFound when there are none, TemporaryRouteError when
        none could be had and one of the queries failed temporarily.
        """
        results = await asyncio.gather(
            self._query(name, "A"), self._query(name, "AAAA"), return_exceptions=True
        )
        addresses: list[str] = []
        ttl = MAX_CACHE_SECONDS
        failure: BaseException | None = None
        for result in results:
            if isinstance(result, BaseException):
                failure = failure or result
            elif result is not None and result.rrset is not None:
                addresses.extend(rdata.address for rdata in result)
                ttl = min(ttl, _ttl(result))
        if addresses:
            return addresses, ttl
        if isinstance(failure, PermanentRouteError):
            raise _NameNotFound(str(failure))
        if failure is not None:
            raise failure
        raise _NameNotFound(f"{name} has no address records")

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """One DNS query; None for NOERROR without records of that type."""
        resolver = self._get_resolver()
        try:
            return await resolver.resolve(
                name.rstrip(".") + ".", rdtype, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN:
            raise PermanentRouteError(
                f"{name}: no such domain (NXDOMAIN)", "5.1.2"
            ) from None
        except dns.exception.Timeout:
            raise TemporaryRouteError(f"{name}: DNS timeout ({rdtype})") from None
        except dns.resolver.NoNameservers as exc:
            raise TemporaryRouteError(f"{name}: DNS server failure: {exc}") from None
        except (dns.exception.SyntaxError, dns.name.NameTooLong) as exc:
            raise PermanentRouteError(
                f"{name}: not a domain name: {exc}", "5.1.3"
            ) from None
        except dns.exception.DNSException as exc:
            raise TemporaryRouteError(f"{name}: DNS lookup failed: {exc}") from exc

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = self._make_resolver()
        return self._resolver

    def _make_resolver(self) -> dns.asyncresolver.Resolver:
        if self._nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [_nameserver(ns) for ns in self._nameservers]
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                raise TemporaryRouteError(
                    f"no nameservers configured and none found on the system: {exc}"
                ) from exc
        resolver.lifetime = self._lifetime
        resolver.timeout = min(self._lifetime, DNS_TRY_TIMEOUT)
        resolver.cache = dns.resolver.LRUCache(DNS_CACHE_ENTRIES)
        return resolver


def _nameserver(server: HostPort) -> dns.nameserver.Do53Nameserver:
    """A dnspython nameserver object, so each may have its own port."""
    address = server.host
    if not _is_ip(address):
        # A name in the setting: resolved once, by the system, at first use.
        infos = socket.getaddrinfo(address, server.port, type=socket.SOCK_DGRAM)
        address = str(infos[0][4][0])
    return dns.nameserver.Do53Nameserver(address, server.port)


async def _system_addresses(name: str, port: int) -> list[str]:
    """IPv4 then IPv6 addresses from getaddrinfo (so /etc/hosts applies)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise _NameNotFound(str(exc)) from exc
    addresses: list[str] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            address = str(info[4][0])
            if info[0] == family and address not in addresses:
                addresses.append(address)
    if not addresses:
        raise _NameNotFound(f"{name} has no addresses")
    return addresses


def _ttl(answer: dns.resolver.Answer) -> float:
    """Seconds this answer may be kept (the smallest TTL of its chain)."""
    return max(0.0, min(answer.expiration - time.time(), MAX_CACHE_SECONDS))


def _expiry(ttl: float) -> float:
    return time.monotonic() + min(ttl, MAX_CACHE_SECONDS)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
